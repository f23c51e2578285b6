"""Training loop (placeholder until fit lands)."""


class TrainingMixin:
    pass
