"""Metrics and the evaluation protocol: image metrics (metrics, lpips), geometry against a
ground-truth mesh (geometry), CLIP and contextual scores (clip_score, contextual), the orbit
protocol that combines them (protocol) and the turntable report (report)."""
