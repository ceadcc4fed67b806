"""EAGLE draft models: default architectures, override merge, the nn.Modules and vocabulary mapping."""
