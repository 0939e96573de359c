#!/bin/bash
# The profiles and single comparisons behind docs/performance.md's "What changed", "Tried and not kept",
# "Where the time goes now" and "bfloat16": each script once per kernel class where it compares kernels,
# its output into <script>.txt with the date, the commit and the CPU flags.
cd "$(dirname "$0")"
export TF_CPP_MIN_LOG_LEVEL=2
head() {
  echo "# $(date -u +%FT%TZ)  commit $(git rev-parse --short HEAD)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  echo "# flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_tile|amx_bf16|avx512_vnni)$' | tr '\n' ' ')  load $(cut -d' ' -f1 /proc/loadavg)"
}
filter() { grep -v -E "^(I0000|W0000|E0000)|WARNING|UserWarning|data_adapter|To enable|^\s*$"; }
for s in parts layers tconv tconv2 smooth wgrad batch; do
  { head; echo "## native kernels"; python $s.py 2>&1 | filter; echo "## ONEDNN_MAX_CPU_ISA=AVX2"; ONEDNN_MAX_CPU_ISA=AVX2 python $s.py 2>&1 | filter; } > $s.txt
done
{ head; python train_opt.py 2>&1 | filter; } > train_opt.txt
{ head; python bf16.py 2>&1 | filter; } > bf16.txt
for w in maps train projection; do
  { head; python profile_ops.py $w 2>&1 | filter; } > profile_$w.txt
  { head; python peer_prof.py $w 2>&1 | filter; } > peer_profile_$w.txt
done
{ head; POLICY=mixed_bfloat16 python profile_ops.py train 2>&1 | filter; } > profile_train_bfloat16.txt
# stacked_vjp.py needs a trained quick-start run in ../../runs/design/s0 (scripts/threshold_study.py --help says how)
{ head; echo "## native kernels"; python stacked_vjp.py 2>&1 | filter; echo "## ONEDNN_MAX_CPU_ISA=AVX2"; ONEDNN_MAX_CPU_ISA=AVX2 python stacked_vjp.py 2>&1 | filter; } > stacked_vjp.txt
{ head; echo "## native kernels"; python wgrad_nchw.py 2>&1 | filter; echo "## ONEDNN_MAX_CPU_ISA=AVX2"; ONEDNN_MAX_CPU_ISA=AVX2 python wgrad_nchw.py 2>&1 | filter; } > wgrad_nchw.txt
{ head; for isa in native AVX2; do for w in maps train; do for side in tfvae peer; do echo "## $side $w, kernels: $isa"; if [ $isa = AVX2 ]; then ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python onednn_verbose.py $side $w; else python onednn_verbose.py $side $w; fi; done; done; done; } > onednn_verbose.txt
{ head; echo "## native kernels"; python wgrad_s2d.py 2>&1 | filter; echo "## ONEDNN_MAX_CPU_ISA=AVX2"; ONEDNN_MAX_CPU_ISA=AVX2 python wgrad_s2d.py 2>&1 | filter; } > wgrad_s2d.txt
{ head; python maps_batch_peer.py 2>&1 | filter; } > maps_batch_peer.txt
