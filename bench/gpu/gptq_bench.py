"""GPTQ on the seven linear shapes of a Llama-3-70B block, ours beside the
PyTorch reference (../shared/bench/gptq_torch_ref.py, copied next to this
file when run on the GPU machine) on the same weights and Hessians, plus the
Hessian accumulation rate. Run on the GPU machine:

  python3 bench/gpu/gptq_bench.py PATH/TO/gptq_bench [tokens]

Weights are randn * 0.02 and each Hessian is 2/N X^T X of N randn
calibration rows, as the reference builds them (q/k/v share one H, as do
gate/up). Prints one table; proxy loss is tr(dW H dW^T) / tr(W H W^T) for
both solutions, computed by the same code."""
import json, os, subprocess, sys, tempfile, time
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_torch_ref import gptq  # noqa: E402

BENCH = sys.argv[1]
TOKENS = int(sys.argv[2]) if len(sys.argv) > 2 else 128 * 2048
HIDDEN, INTER, KV = 8192, 28672, 1024
LINEARS = [("q_proj", HIDDEN, HIDDEN, "attn"), ("k_proj", KV, HIDDEN, "attn"),
           ("v_proj", KV, HIDDEN, "attn"), ("o_proj", HIDDEN, HIDDEN, "o"),
           ("gate_proj", INTER, HIDDEN, "mlp"), ("up_proj", INTER, HIDDEN, "mlp"),
           ("down_proj", HIDDEN, INTER, "down")]
# The packed program loads the Debian libraries carried beside it
# (../shared/tools/device-pack); Python keeps the machine's own.
LIBS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(BENCH))), "lib")
BENCH_ENV = dict(os.environ, LD_LIBRARY_PATH=":".join(
    [LIBS, "/usr/local/cuda/lib64", os.environ.get("LD_LIBRARY_PATH", "")]))
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)


def hessian(cols):
    torch.backends.cuda.matmul.allow_tf32 = True  # As the reference builds H.
    h = torch.zeros(cols, cols, device=dev)
    for _ in range(0, TOKENS, 8192):
        x = torch.randn(8192, cols, device=dev, generator=g)
        h.addmm_(x.t(), x, beta=1.0, alpha=2.0 / TOKENS)
    torch.backends.cuda.matmul.allow_tf32 = False
    return h


def relative_error(w, q, h):
    d = (q - w).double()
    hd = h.double()
    return float((d @ hd * d).sum() / ((w.double() @ hd) * w.double()).sum())


work = tempfile.mkdtemp(dir="/dev/shm")
hessians, weights = {}, {}
for name, rows, cols, inp in LINEARS:
    if inp not in hessians:
        hessians[inp] = hessian(cols)
        hessians[inp].cpu().numpy().tofile(f"{work}/{inp}.h")
    weights[name] = torch.randn(rows, cols, device=dev, generator=g) * 0.02
    weights[name].cpu().numpy().tofile(f"{work}/{name}.w")
torch.cuda.synchronize()

ours = {}
out = subprocess.run([BENCH, "solve", work] +
                     [f"{n}:{r}x{c}:{h}" for n, r, c, h in LINEARS],
                     check=True, capture_output=True, text=True,
                     env=BENCH_ENV)
sys.stderr.write(out.stderr)
for line in out.stdout.splitlines():
    row = json.loads(line)
    ours[row["linear"]] = row

# The reference, warmed up as its own main() does.
ww = torch.randn(256, 512, device=dev); xw = torch.randn(1024, 512, device=dev)
gptq(ww, xw.t() @ xw); torch.cuda.synchronize()
rows_out = []
for name, rows, cols, inp in LINEARS:
    w, h = weights[name], hessians[inp]
    torch.cuda.synchronize(); t0 = time.time()
    q_ref, _ = gptq(w, h)
    torch.cuda.synchronize(); t_ref = time.time() - t0
    q_ours = torch.from_numpy(
        __import__("numpy").fromfile(f"{work}/{name}.q", dtype="float32")
    ).to(dev).view(rows, cols)
    rows_out.append((name, rows, cols, t_ref, ours[name],
                     relative_error(w, q_ref, h), relative_error(w, q_ours, h)))
    del q_ref, q_ours
    torch.cuda.empty_cache()

print(f"device: {torch.cuda.get_device_name()}; calibration tokens {TOKENS}; "
      "GPTQ 4-bit g128 asymmetric, damp 1%; ours factors each shared Hessian "
      "once (with its first linear)")
print(f"{'linear':10} {'shape':>12} {'torch ref s':>11} {'ours s':>8} "
      f"{'speed-up':>8} {'ref rel err':>12} {'our rel err':>12} {'ours vs ref':>11}"
      f" {'factor s':>8} {'fits s':>7} {'columns s':>9} {'updates s':>9}")
tr = to = 0
for name, rows, cols, t_ref, o, e_ref, e_ours in rows_out:
    t_ours = o["gptq_s"]
    tr += t_ref; to += t_ours
    print(f"{name:10} {rows:>5}x{cols:<6} {t_ref:11.3f} {t_ours:8.3f} "
          f"{t_ref / t_ours:7.1f}x {e_ref:12.6e} {e_ours:12.6e} "
          f"{100 * (e_ours / e_ref - 1):+10.3f}% {o['factor_s']:8.3f} {o['fits_s']:7.3f} "
          f"{o['columns_s']:9.3f} {o['updates_s']:9.3f}")
print(f"{'block':10} {'':12} {tr:11.3f} {to:8.3f} {tr / to:7.1f}x")

for cols in (HIDDEN, INTER):
    out = subprocess.run([BENCH, "hessian", str(cols), str(TOKENS), "16384"],
                         check=True, capture_output=True, text=True,
                         env=BENCH_ENV)
    print("hessian", out.stdout.strip())
