"""Depot package service."""
