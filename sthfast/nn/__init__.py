"""The model's building blocks as ``nn.Module``s: backbone loading, the temporal and spatial
streams and the fusion variants. The assembled model is :class:`sthfast.STHSepNet`."""
