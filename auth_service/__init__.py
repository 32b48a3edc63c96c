"""Depot auth service."""
