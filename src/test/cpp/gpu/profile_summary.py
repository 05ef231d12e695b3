"""Summarise `ncu --csv --metrics gpu__time_duration.sum` output: time per kernel name, largest first."""
import csv
import sys
from collections import defaultdict

total = defaultdict(float)
count = defaultdict(int)
with open(sys.argv[1]) as f:
    lines = [l for l in f if l.startswith('"')]
for row in csv.DictReader(lines):
    if row.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = row["Kernel Name"][:90]
    value = float(row["Metric Value"].replace(",", ""))
    unit = row.get("Metric Unit", "nsecond")
    scale = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0}.get(unit, 1e-6)
    total[name] += value * scale
    count[name] += 1
grand = sum(total.values())
print(f"{'ms':>8} {'n':>4}  kernel   (total {grand:.3f} ms)")
for name, ms in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"{ms:8.3f} {count[name]:4d}  {name}")
