"""Service layer: owns transactions; routes stay thin."""
