"""Making and judging models: prepared data, the stream to the workers, the Ray Train loop
with in-loop validation, evaluation against the gray baseline, k-fold figures, a model's int8 twin.
Imports every other `pipeline` package; none imports it."""
