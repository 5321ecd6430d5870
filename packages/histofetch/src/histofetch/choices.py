"""The fixed choices of histofetch's string options, as ``Literal`` types, without heavy
imports: the CLI annotates its options with them, so Typer lists the choices in ``--help``
and a malformed value is a usage error (exit 2); the library checks values against the
tuples made from them (:data:`histofetch.search.DATABASES`,
:data:`histofetch.licence.POLICIES`' keys)."""

from __future__ import annotations

from typing import Literal

#: where ``histofetch search`` looks: PubMed, or PMC's open-access subset
Database = Literal["pubmed", "pmc"]
#: ``--licence``: the reuse the kept articles' licences must allow
LicencePolicy = Literal["any", "commercial", "noncommercial"]
