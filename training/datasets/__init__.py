"""The dataset contract (`shared/contracts/dataset.md`): manifest, checks, reader, cache, writer,
splits, and the dataset sources (the synthetic generator, the POWDER importer).
"""
