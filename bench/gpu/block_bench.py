"""The whole GPTQ block task of a Llama-3-70B-shaped layer: ours (block_bench,
the CUDA backend as a GPU worker runs it) beside the PyTorch reference
(../shared/bench/block_torch_ref.py, copied next to this file when run on the
GPU machine), in one run on one GPU. Run on the GPU machine:

  python3 bench/gpu/block_bench.py PATH/TO/block_bench [sequences] [per_pass]

Ours runs twice: true-sequential (our default: each stage calibrated on the
stages quantized before it, so more forward work) and in one pass as the
reference does. Prints one markdown table."""
import json, os, subprocess, sys

BENCH = sys.argv[1]
SEQUENCES = sys.argv[2] if len(sys.argv) > 2 else "128"
PER_PASS = sys.argv[3] if len(sys.argv) > 3 else "8"
HERE = os.path.dirname(os.path.abspath(__file__))
LIBS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(BENCH))), "lib")
BENCH_ENV = dict(os.environ, LD_LIBRARY_PATH=":".join(
    [LIBS, "/usr/local/cuda/lib64", os.environ.get("LD_LIBRARY_PATH", "")]))


def ours(true_sequential):
    out = subprocess.run([BENCH, SEQUENCES, PER_PASS, true_sequential],
                         check=True, capture_output=True, text=True,
                         env=BENCH_ENV)
    sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


sequential = ours("1")
one_pass = ours("0")
ref_out = subprocess.run([sys.executable, os.path.join(HERE, "block_torch_ref.py"),
                          SEQUENCES, PER_PASS], check=True, capture_output=True,
                         text=True)
ref = json.loads(ref_out.stdout.strip().splitlines()[-1])

print(f"Device: {sequential['device']}; {sequential['tokens']} calibration tokens, "
      f"{PER_PASS} sequences per pass; GPTQ 4-bit g128 asymmetric.\n")
print("| run | block total s | of which solves + reports s | peak GPU GiB | vs reference |")
print("| --- | ---: | ---: | ---: | ---: |")
total_ref = ref["block_total_s"]
for label, r in [("ours, true-sequential", sequential), ("ours, one pass (as the reference)", one_pass)]:
    print(f"| {label} | {r['block_total_s']:.2f} | {r['linears_s']:.2f} | "
          f"{r['peak_gib']:.1f} | {total_ref / r['block_total_s']:.1f}x |")
print(f"| reference (block_torch_ref.py) | {total_ref:.2f} | {ref['gptq_solves_s']:.2f} | "
      f"{ref['peak_gib']:.1f} | 1.0x |")
print("\nReference stages: " + json.dumps(ref))
print("Ours per linear (true-sequential): " + json.dumps(sequential["linears"]))
for label, r in [("true-sequential", sequential), ("one pass", one_pass)]:
    print(f"\nOurs by phase ({label}, s):\n")
    print("| phase | s |\n| --- | ---: |")
    for phase, s in r["phases"].items():
        print(f"| {phase} | {s:.3f} |")
