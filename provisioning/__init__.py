"""Site PKI, unit identities and bundles, broker configuration and revocation."""
