"""Seams the test suite uses inside production code (see faults.py); nothing here runs unless a test asks."""
