#!/usr/bin/env bash
# Installs the system packages ghostwire's demo and tests use (Debian/Ubuntu), when missing.
set -euo pipefail
need=()
command -v nft >/dev/null || need+=(nftables)
command -v iptables-legacy >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v conntrack >/dev/null || need+=(conntrack)
command -v curl >/dev/null || need+=(curl)
command -v ps >/dev/null || need+=(procps)
command -v python3 >/dev/null || need+=(python3)
[ -x /usr/bin/python ] || need+=(python-is-python3)   # `python` in the lab's python image (kubectl exec)
command -v socat >/dev/null || need+=(socat)
command -v setpriv >/dev/null || need+=(util-linux)
# The gateway's tests: the real DHCP clients that must get leases from our server.
command -v udhcpc >/dev/null || need+=(udhcpc)
command -v dhclient >/dev/null || need+=(isc-dhcp-client)
command -v dhcpcd >/dev/null || need+=(dhcpcd-base)
command -v dig >/dev/null || need+=(dnsutils)          # dig, nslookup: cluster DNS tests
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)  # the DNS tests' upstream, the DNS benchmark's peer
command -v tcpdump >/dev/null || need+=(tcpdump)       # the kill-switch test's capture
command -v openssl >/dev/null || need+=(openssl)       # the mesh TLS test: the app's own TLS server (s_server)
command -v dnsperf >/dev/null || need+=(dnsperf)       # the DNS benchmark (lab-dns --bench dnsperf)
command -v openvpn >/dev/null || need+=(openvpn)       # the gateway's VPN test; the lab's openvpn image (lab-node tests/images.rs)
command -v ping >/dev/null || need+=(iputils-ping)   # the openvpn peers ping each other through the tunnel (tests/images.rs)
command -v ldns-signzone >/dev/null || need+=(ldnsutils)  # the gateway's DNSSEC test signs its own zone
nsd_missing=0; command -v nsd >/dev/null || { need+=(nsd); nsd_missing=1; }  # ... and serves it
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  # The package starts a system nsd; the test runs its own in a lab namespace.
  if [ "$nsd_missing" -eq 1 ] && command -v systemctl >/dev/null; then
    systemctl disable --now nsd >/dev/null 2>&1 || true
  fi
fi
# Schema validation of deploy/ (its schemas ship with the package; it runs offline).
if ! command -v kubernetes-validate >/dev/null; then
  echo "installing: kubernetes-validate (PyPI)"
  python3 -m pip install -q kubernetes-validate
fi
# gRPC peers for the mesh tests (a client and server nobody here wrote).
if ! python3 -c 'import grpc' 2>/dev/null; then
  echo "installing: grpcio (PyPI)"
  python3 -m pip install -q grpcio
fi
# The official Kubernetes Python client: the lab's tests drive exec and workloads with it too.
if ! python3 -c 'import kubernetes' 2>/dev/null; then
  echo "installing: kubernetes (PyPI)"
  python3 -m pip install -q kubernetes
fi
# The official OpenAI and Ollama Python clients: the lab's fake model server (crate lab-llm)
# and the lab/fake-llm image are tested with them.
if ! python3 -c 'import openai, ollama' 2>/dev/null; then
  echo "installing: openai, ollama (PyPI)"
  python3 -m pip install -q openai ollama
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ghostwire's lab creates network namespaces: run as root (sudo)." >&2
  exit 1
fi
