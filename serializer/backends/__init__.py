"""Device backends. Each imports only the core (`serializer._io`), never another backend."""
