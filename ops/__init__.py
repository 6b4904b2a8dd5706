"""Operations: /metrics, /healthz, /readyz, and the weekly and quarterly reports (Art. 10.2, 11.4, 14.2)."""
