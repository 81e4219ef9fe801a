"""gRPC side: servicers, conversion, error mapping, interceptors, server."""
