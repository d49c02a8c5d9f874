"""Procedural synthetic people in the LIP and PASCAL-Person-Part layouts.

May import: data (its layouts and matfiles), codecs, transforms, utils.
"""
