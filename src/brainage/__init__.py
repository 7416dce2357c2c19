"""brainage: predict brain age from structural T1-weighted MRI with 3D CNNs."""

__version__ = "0.1.0"
