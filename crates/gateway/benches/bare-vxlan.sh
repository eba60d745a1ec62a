#!/usr/bin/env bash
# The gateway benchmark's throughput paths rebuilt with bare `ip` commands, no ghostwire: what
# the kernel charges for them on this machine. Run as root:
#   crates/gateway/benches/bare-vxlan.sh [SECONDS] [ROUNDS]
# Namespaces (own names, removed on exit): P (a plain Pod), C (a client Pod), N (the node,
# routing), G (the gateway Pod), I (the internet, iperf3 server on 203.0.113.10).
#   direct:  P -> N -> I                                   (the bench's "direct veth")
#   tunnel:  C =vxlan over C-N-G=> G -> I (forwarded, MASQUERADE by nft, like the gateway)
#   vxlan2:  C =vxlan=> G only (the tunnel hop alone, no forwarding after it)
#   routed3: C -> N -> G -> I without vxlan (the same hops, no encapsulation)
# With GRO=1 every veth gets `ethtool -K DEV gro on` (veth GRO is off by default).
# Each line is one round; compare the ratios, not the absolute numbers.
set -u
T=${1:-5}
ROUNDS=${2:-3}
X="gwbare$$"
ns() { echo "$X-$1"; }
cleanup() {
  for n in P C N G I; do
    for p in $(ip netns pids "$(ns $n)" 2>/dev/null); do kill "$p" 2>/dev/null; done
  done
  for n in P C N G I; do ip netns del "$(ns $n)" 2>/dev/null; done
}
trap cleanup EXIT
set -e
for n in P C N G I; do ip netns add "$(ns $n)"; ip -n "$(ns $n)" link set lo up; done
veth() { # veth NS1 DEV1 ADDR1 NS2 DEV2 ADDR2
  ip -n "$(ns $1)" link add "$2" type veth peer name "$5" netns "$(ns $4)"
  ip -n "$(ns $1)" addr add "$3" dev "$2"; ip -n "$(ns $4)" addr add "$6" dev "$5"
  ip -n "$(ns $1)" link set "$2" up; ip -n "$(ns $4)" link set "$5" up
}
veth P eth0 10.77.1.2/24 N p0 10.77.1.1/24
veth C eth0 10.77.2.2/24 N c0 10.77.2.1/24
veth G eth0 10.77.3.2/24 N g0 10.77.3.1/24
veth N up0 198.18.77.2/30 I up0 198.18.77.1/30
veth G tun0 198.18.78.2/30 I gw0 198.18.78.1/30
ip -n "$(ns I)" addr add 203.0.113.10/32 dev lo
if [ "${GRO:-0}" = 1 ]; then
  for d in P:eth0 C:eth0 G:eth0 G:tun0 N:p0 N:c0 N:g0 N:up0 I:up0 I:gw0; do
    ip netns exec "$(ns "${d%%:*}")" ethtool -K "${d#*:}" gro on
  done
fi
for n in N G; do ip netns exec "$(ns $n)" sysctl -qw net.ipv4.ip_forward=1; done
ip -n "$(ns P)" route add default via 10.77.1.1
ip -n "$(ns C)" route add default via 10.77.2.1
ip -n "$(ns G)" route add 10.77.0.0/16 via 10.77.3.1
ip -n "$(ns N)" route add 203.0.113.0/24 via 198.18.77.1
ip -n "$(ns I)" route add 10.77.0.0/16 via 198.18.77.2
# The tunnel, as `gateway init` and `client init` make it (MTU 1450 over a 1500 underlay).
ip -n "$(ns G)" link add vxlan0 type vxlan id 42 dev eth0 dstport 8472 remote 10.77.2.2
ip -n "$(ns C)" link add vxlan0 type vxlan id 42 dev eth0 dstport 8472 remote 10.77.3.2
ip -n "$(ns G)" addr add 172.31.0.1/24 dev vxlan0; ip -n "$(ns C)" addr add 172.31.0.10/24 dev vxlan0
ip -n "$(ns G)" link set vxlan0 mtu 1450 up; ip -n "$(ns C)" link set vxlan0 mtu 1450 up
ip -n "$(ns G)" route add default via 198.18.78.1 dev tun0
ip netns exec "$(ns G)" nft add table ip bare
ip netns exec "$(ns G)" nft add chain ip bare post '{ type nat hook postrouting priority srcnat; }'
ip netns exec "$(ns G)" nft add rule ip bare post oifname tun0 masquerade
run() { # run NS DEST [SRC] -> Gbit/s
  local src=(); [ -n "${3:-}" ] && src=(-B "$3")
  for _ in 1 2 3 4 5; do
    if out=$(ip netns exec "$(ns $1)" iperf3 -c "$2" -p 5399 -t "$T" -J "${src[@]}" 2>/dev/null); then
      python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))' <<<"$out" && return
    fi
    sleep 0.3
  done
  echo 0
}
ip netns exec "$(ns I)" iperf3 -s -D -p 5399 >/dev/null
ip netns exec "$(ns G)" iperf3 -s -D -p 5399 >/dev/null
sleep 0.5
echo "# iperf3 -t $T, TCP, one stream; Gbit/s"
for r in $(seq 1 "$ROUNDS"); do
  # C reaches I through the tunnel (policy: everything from C's tunnel address).
  ip -n "$(ns C)" route replace 203.0.113.10/32 via 172.31.0.1 dev vxlan0
  tunnel=$(run C 203.0.113.10 172.31.0.10)
  vx2=$(run C 172.31.0.1)
  ip -n "$(ns C)" route replace 203.0.113.10/32 via 10.77.2.1 dev eth0
  direct=$(run P 203.0.113.10)
  # routed3: C -> N -> G -> I, no vxlan (N sends C's traffic for I to G).
  ip -n "$(ns N)" route add 203.0.113.10/32 via 10.77.3.2 2>/dev/null || true
  routed3=$(run C 203.0.113.10)
  ip -n "$(ns N)" route del 203.0.113.10/32 via 10.77.3.2
  python3 - "$r" "$direct" "$tunnel" "$vx2" "$routed3" <<'PY'
import sys
r, d, t, v, h = sys.argv[1], *map(float, sys.argv[2:])
pc = lambda x: f"{100*x/d:4.0f} %" if d else "-"
print(f"round {r}: direct {d:5.2f}  tunnel {t:5.2f} ({pc(t)})  vxlan hop only {v:5.2f} ({pc(v)})  same hops, no vxlan {h:5.2f} ({pc(h)})")
PY
done
