"""Models in other formats: a standalone student, CTranslate2."""
