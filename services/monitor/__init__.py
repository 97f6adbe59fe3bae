"""The drift monitor: a durable store of inference records, Evidently drift, Prometheus gauges, a status page."""
