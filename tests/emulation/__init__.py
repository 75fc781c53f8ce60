"""Emulated GPIO back ends (doubles of real daemons and kernel interfaces) for the tests."""
