"""Procedural synthetic people in the LIP and PASCAL-Person-Part layouts."""
