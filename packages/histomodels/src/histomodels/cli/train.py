"""Placeholder: commands are added here by the owning module."""
