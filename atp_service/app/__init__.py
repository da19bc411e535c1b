"""One service process: its wiring (``service``), the executables (``cli``: atp-service, ``ctl``:
atpctl), the demo estate and development certificates.

Nothing is re-exported here: ``cli`` chooses gRPC's HTTP/2 transport before ``grpc`` is imported.
"""
