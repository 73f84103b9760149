"""The summary block a stand-in train.py prints (train.py's own format), as source text to append to
one: it prints `val`, `DEPTH` and `seed`, which the stand-in defines, and its TRAINED seconds of
training where it defines that knob (else 1 s)."""

SUMMARY = """\
print("---")
print(f"val_bpb:          {val:.6f}")
for line in [f"training_seconds: {globals().get('TRAINED', 1.0)}", "total_seconds:    1.5", "peak_vram_mb:     100.0",
             "mfu_percent:      1.00", "total_tokens_M:   0.1", "num_steps:        2",
             "num_params_M:     1.0", f"depth:            {DEPTH}", "profile:          smoke",
             "device:           cpu", "device_name:      stand-in cpu", f"seed:             {seed}"]:
    print(line)
"""
