"""The distribution's version, shared by client and server."""

__version__ = '0.1.0'
