"""The gRPC face of the service: the servicer and its conversions, auth, admission at the door,
graceful drain, availability watches, the HTTP/2 transport choice.

Nothing is re-exported here on purpose: ``transport`` must be importable before ``grpc`` is (gRPC
reads its experiments once, at its first import), and only ``atp_service.app`` wires the edge.
"""
