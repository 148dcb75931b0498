"""lmroute_bundle: the artifact bundle contract (manifest, writer, validating loader)."""
