"""dicomweb_wsgi: a DICOMweb origin server (PS3.18) as a minimal WSGI application."""

__version__ = "0.1.0"
