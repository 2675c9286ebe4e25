"""Central extraction: the worker that decrypts stored clips in memory, measures their quality and
extracts voice and face features, with provenance, into the catalog."""
