"""Stage 2. Takes the config's base and K3s sources (catalog names, URLs, releases, files);
gives verified local files: cached downloads, decompressed sparse bases, checked sha256.
"""
