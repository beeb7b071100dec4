"""Network definitions (no training loops): the TF-VAEGAN feature generator."""

from .tfvaegan import TFVAEGAN, Discriminator, Encoder, Feedback, Generator, SemanticDecoder

__all__ = ["Encoder", "Generator", "Discriminator", "Feedback", "SemanticDecoder", "TFVAEGAN"]
