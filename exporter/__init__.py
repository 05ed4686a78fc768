"""edgeport: export trained models to browser formats, prove parity, serve a fallback.

The library API, one function per CLI command:
    edgeport.export.export_model   (edgeport export)
    edgeport.check.check_bundle    (edgeport check)
"""
__version__ = "0.1.0"
