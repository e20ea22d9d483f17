"""raccnn: Recurrent Attention CNN (RA-CNN) for fine-grained image recognition."""
__version__ = "0.1.0"
