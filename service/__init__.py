"""lmroute_service: the gRPC Score/Route service."""
