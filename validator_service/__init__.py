"""Depot validator service."""
