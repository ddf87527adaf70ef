#!/usr/bin/env bash
# A single-node Kubernetes cluster on this machine, from the binaries scripts/build-control-plane.sh
# caches: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and a kubelet
# running pods through a private containerd (own root, state, socket and CNI config; a system
# containerd or Docker is never touched).
#
#   node.sh start             start it (idempotent: a running node is reused), print the kubeconfig path
#   node.sh stop              stop every process, remove every pod, the bridge and the node's files
#   node.sh status            exit 0 when the API server is ready and the node Ready
#   node.sh load ARCHIVE...   import image archives (docker save / OCI) into the node's containerd
#   node.sh kubeconfig        print the admin kubeconfig path
#   node.sh env               print `export KUBECONFIG=...` (eval "$(scripts/node.sh env)")
#
# Network: pods get addresses of $FICUS_POD_CIDR (default 10.244.0.0/24) on the bridge ficus0
# that this script owns; the host end, 10.244.0.1, is the node IP and the API server address, so
# pods reach services run as local processes on the host at 10.244.0.1. Forwarded pod traffic
# that leaves the pod range is dropped: everything stays on this machine. Services: kube-proxy
# (iptables) on 10.96.0.0/24. No cluster DNS: address services by ClusterIP or host IP.
#
# Needs root (bridge, iptables, mounts), containerd, runc and the CNI plugins (Debian packages
# containerd, runc, containernetworking-plugins; scripts/install-deps.sh node installs them).
set -euo pipefail

KUBE_VERSION="${FICUS_KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${FICUS_ETCD_VERSION:-v3.6.16}"
PAUSE_TAG="${FICUS_PAUSE_TAG:-3.10.1}"
CACHE="${FICUS_CACHE:-$HOME/.cache/ficus}"
BIN="$CACHE/bin"
DIR="${FICUS_NODE_DIR:-/var/tmp/ficus-node}"
NODE_NAME="${FICUS_NODE_NAME:-ficus-node}"
BRIDGE=ficus0
NODE_IP="${FICUS_NODE_IP:-10.244.0.1}"
POD_CIDR="${FICUS_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SVC_IP=10.96.0.1
API_PORT=6443
# Fixed ports below the ephemeral range, so tests binding port 0 never take them.
ETCD_PORT=12379
ETCD_PEER_PORT=12380
CNI_BIN="${FICUS_CNI_BIN:-/usr/lib/cni}"
SOCK="$DIR/containerd/containerd.sock"
KUBECONFIG_FILE="$DIR/kubeconfig"

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

bin() {
  local path="$BIN/$1-$2"
  [[ -x "$path" ]] || die "$path missing: run scripts/build-control-plane.sh all && scripts/build-control-plane.sh node"
  echo "$path"
}

alive() { [[ -f "$DIR/run/$1.pid" ]] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }

# Starts $1 in its own session (it outlives this script), log in logs/$1.log.
spawn() {
  local name="$1"; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/$name.pid"
}

# Starts $1 like spawn, and starts it again whenever it exits, as a service manager would: the
# kubelet exits on any error at start-up (runtime not answering yet, a resource it cannot get)
# and expects to be restarted. Each exit is written to its log; run/$1.restarts counts them.
spawn_supervised() {
  local name="$1"; shift
  echo 0 >"$DIR/run/$name.restarts"
  spawn "$name" bash -c '
    restarts="$1"; shift
    while :; do
      "$@"
      status=$?
      echo $(( $(cat "$restarts") + 1 )) >"$restarts"
      printf "[node] %s exited with status %s; starting it again in 2s\n" "$1" "$status"
      sleep 2
    done' supervise "$DIR/run/$name.restarts" "$@"
}

kctl() { "$(bin kubectl "$KUBE_VERSION")" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

api_ready() { [[ "$(kctl get --raw /readyz 2>/dev/null)" == ok ]]; }

node_ready() {
  [[ "$(kctl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND, showing the logs on timeout.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      log "$what: not after ${secs}s"
      diagnose
      log "last log lines:"
      for f in "$DIR"/logs/*.log; do echo "== $f" >&2; tail -n 15 "$f" >&2; done
      return 1
    fi
    sleep 0.5
  done
}

# What is most often behind a node that does not come up, first and short (the logs follow).
diagnose() {
  local name
  for name in containerd etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet; do
    [[ -f "$DIR/run/$name.pid" ]] || continue
    alive "$name" || log "$name is not running (log: $DIR/logs/$name.log)"
  done
  if [[ -f "$DIR/run/kubelet.restarts" ]] && (( $(cat "$DIR/run/kubelet.restarts") > 0 )); then
    log "the kubelet exited $(cat "$DIR/run/kubelet.restarts") time(s) and was started again"
  fi
  log "inotify instances open on this machine: $(inotify_instances) (limit $(cat /proc/sys/fs/inotify/max_user_instances) per user; the node runs as root)"
  if api_ready 2>/dev/null; then
    local conditions
    conditions="$(kctl get node "$NODE_NAME" -o 'jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"; "}{end}' 2>&1 || true)"
    log "node $NODE_NAME: ${conditions:-not registered}"
  fi
  if [[ -f "$DIR/logs/containerd.log" ]]; then
    { grep -F 'failed to load plugin io.containerd.grpc.v1.cri' "$DIR/logs/containerd.log" || true; } | tail -n 1 | cut -c1-400 >&2
  fi
  if [[ -f "$DIR/logs/kubelet.log" ]]; then
    log "the kubelet's last errors:"
    { grep -E '^[EF][0-9]{4} |exited with status' "$DIR/logs/kubelet.log" || true; } | tail -n 8 | cut -c1-400 >&2
  fi
}

# Open inotify instances of every process (each is an fd linked to anon_inode:inotify).
inotify_instances() {
  find /proc/[0-9]*/fd -lname 'anon_inode:inotify' 2>/dev/null | wc -l
}

# The kubelet (cAdvisor), containerd (its CNI config watcher) and the control plane take about
# 16 inotify instances. Debian's default of 128 per user can be used up on a busy machine, and
# then the kubelet exits at start ("Failed to start cAdvisor: inotify_init: too many open
# files") or containerd runs without its CRI plugin: raise the limits to what kind asks for, and
# put the old values back on stop.
raise_inotify_limits() {
  local key want file
  for key in max_user_instances:8192 max_user_watches:524288; do
    want="${key#*:}"; key="${key%%:*}"; file="/proc/sys/fs/inotify/$key"
    [[ -f "$DIR/run/inotify.$key.orig" ]] || cat "$file" >"$DIR/run/inotify.$key.orig"
    if (( $(cat "$file") < want )); then echo "$want" >"$file"; fi
  done
}

restore_inotify_limits() {
  local key
  for key in max_user_instances max_user_watches; do
    if [[ -f "$DIR/run/inotify.$key.orig" ]]; then cat "$DIR/run/inotify.$key.orig" >"/proc/sys/fs/inotify/$key"; fi
  done
}

certs() {
  local c="$DIR/pki"
  mkdir -p "$c"
  [[ -f "$c/admin.crt" ]] && return
  log "generating certificates"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=ficus-node-ca" \
    -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
  # The API server is reached at the node IP (host, pods through the bridge), through the
  # kubernetes Service (pods, in-cluster config) and on loopback.
  cat >"$c/apiserver.ext" <<EOF
subjectAltName=IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$c/apiserver.key" -out "$c/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial -days 3650 \
    -extfile "$c/apiserver.ext" -out "$c/apiserver.crt" 2>/dev/null
  # One admin identity (system:masters) for the components and the user: a test node, not a
  # hardened one. The API server presents it to the kubelet for logs, exec and port-forward.
  printf 'extendedKeyUsage=clientAuth\n' >"$c/client.ext"
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=ficus-admin" -keyout "$c/admin.key" -out "$c/admin.csr" 2>/dev/null
  openssl x509 -req -in "$c/admin.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial -days 3650 \
    -extfile "$c/client.ext" -out "$c/admin.crt" 2>/dev/null
  openssl genrsa -out "$c/sa.key" 2048 2>/dev/null
  openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" 2>/dev/null
  cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ficus-node
  cluster: { server: "https://$NODE_IP:$API_PORT", certificate-authority: "$c/ca.crt" }
users:
- name: ficus-admin
  user: { client-certificate: "$c/admin.crt", client-key: "$c/admin.key" }
contexts:
- name: ficus-node
  context: { cluster: ficus-node, user: ficus-admin }
current-context: ficus-node
EOF
}

network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  local prefix="${POD_CIDR#*/}"
  ip addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/" || ip addr add "$NODE_IP/$prefix" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # The host routes between pods and Service addresses (kube-proxy DNATs on the host).
  if [[ ! -f "$DIR/run/ip_forward.orig" ]]; then cat /proc/sys/net/ipv4/ip_forward >"$DIR/run/ip_forward.orig"; fi
  echo 1 >/proc/sys/net/ipv4/ip_forward
  # ...but never out of this machine: forwarded pod traffic that leaves the pod range is dropped.
  iptables -N FICUS-NODE 2>/dev/null || iptables -F FICUS-NODE
  iptables -A FICUS-NODE -s "$POD_CIDR" -d "$POD_CIDR" -j ACCEPT
  iptables -A FICUS-NODE -s "$POD_CIDR" -j DROP
  iptables -C FORWARD -j FICUS-NODE 2>/dev/null || iptables -I FORWARD -j FICUS-NODE
  mkdir -p "$DIR/cni/net.d"
  cat >"$DIR/cni/net.d/10-ficus.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ficus",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$NODE_IP" }]],
                "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$DIR/cni/ipam" }
    },
    { "type": "loopback" }
  ]
}
EOF
}

containerd_start() {
  alive containerd && return
  mkdir -p "$DIR/containerd"
  cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:$PAUSE_TAG"
  # Without CAP_SYS_RESOURCE the pause container's oom_score_adj (-998) is refused and every
  # sandbox fails ("can't get final child's PID from pipe"): clamp it instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$DIR/cni/net.d"
EOF
  spawn containerd containerd --config "$DIR/containerd/config.toml"
  wait_for "containerd" 30 ctr --address "$SOCK" version >/dev/null 2>&1
  ctr_import "$CACHE/images/pause-$PAUSE_TAG.tar"
}

ctr_k8s() { ctr --address "$SOCK" -n k8s.io "$@"; }

ctr_import() {
  local archive
  for archive in "$@"; do
    [[ -f "$archive" ]] || die "$archive missing (the pause image: scripts/build-control-plane.sh node)"
    ctr_k8s images import --snapshotter overlayfs "$archive" >/dev/null
    log "imported $(basename "$archive")"
  done
}

control_plane_start() {
  local c="$DIR/pki"
  if ! alive etcd; then
    spawn etcd "$(bin etcd "$ETCD_VERSION")" --data-dir="$DIR/etcd" \
      --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync=true --log-level=warn
  fi
  if ! alive kube-apiserver; then
    spawn kube-apiserver "$(bin kube-apiserver "$KUBE_VERSION")" \
      --advertise-address="$NODE_IP" --bind-address="$NODE_IP" --secure-port="$API_PORT" \
      --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
      --tls-cert-file="$c/apiserver.crt" --tls-private-key-file="$c/apiserver.key" --client-ca-file="$c/ca.crt" \
      --kubelet-client-certificate="$c/admin.crt" --kubelet-client-key="$c/admin.key" \
      --kubelet-preferred-address-types=InternalIP \
      --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true --authorization-mode=Node,RBAC \
      --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$c/sa.pub" \
      --service-account-signing-key-file="$c/sa.key"
  fi
  wait_for "kube-apiserver ready" 90 api_ready
  if ! alive kube-controller-manager; then
    spawn kube-controller-manager "$(bin kube-controller-manager "$KUBE_VERSION")" \
      --kubeconfig="$KUBECONFIG_FILE" --leader-elect=false --bind-address=127.0.0.1 \
      --service-account-private-key-file="$c/sa.key" --root-ca-file="$c/ca.crt" \
      --cluster-signing-cert-file="$c/ca.crt" --cluster-signing-key-file="$c/ca.key" \
      --service-cluster-ip-range="$SERVICE_CIDR" --use-service-account-credentials=false
  fi
  if ! alive kube-scheduler; then
    spawn kube-scheduler "$(bin kube-scheduler "$KUBE_VERSION")" \
      --kubeconfig="$KUBECONFIG_FILE" --leader-elect=false --bind-address=127.0.0.1
  fi
}

kube_proxy_start() {
  alive kube-proxy && return
  cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: { kubeconfig: "$KUBECONFIG_FILE" }
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
# Service traffic is source-NATed, so replies find their way back whatever the bridge does.
iptables: { masqueradeAll: true }
# Leave the host's conntrack settings alone (0: do not set).
conntrack: { maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s }
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
  spawn kube-proxy "$(bin kube-proxy "$KUBE_VERSION")" --config="$DIR/kube-proxy.yaml"
}

kubelet_start() {
  alive kubelet && return
  mkdir -p "$DIR/kubelet" "$DIR/pod-logs"
  cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
# This machine has cgroup v1 (hybrid), no systemd and swap may be on.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
address: $NODE_IP
readOnlyPort: 0
podLogsDir: $DIR/pod-logs
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: false }
  x509: { clientCAFile: "$DIR/pki/ca.crt" }
authorization: { mode: AlwaysAllow }
serializeImagePulls: false
# The machine's disk is shared with builds: do not evict pods for it, never collect images.
evictionHard: { memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%" }
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  spawn_supervised kubelet "$(bin kubelet "$KUBE_VERSION")" --config="$DIR/kubelet.yaml" \
    --kubeconfig="$KUBECONFIG_FILE" --root-dir="$DIR/kubelet" --cert-dir="$DIR/pki/kubelet" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
}

start() {
  mkdir -p "$DIR/run" "$DIR/logs"
  if api_ready 2>/dev/null && node_ready && alive kubelet && alive containerd && alive kube-proxy; then
    log "already running"
    echo "$KUBECONFIG_FILE"
    return
  fi
  local begin=$SECONDS
  raise_inotify_limits
  certs
  network
  containerd_start
  control_plane_start
  kube_proxy_start
  kubelet_start
  wait_for "node $NODE_NAME Ready" 120 node_ready
  # Pods need their namespace's default ServiceAccount (created by the controller-manager).
  wait_for "default ServiceAccount" 60 kctl get serviceaccount default -n default >/dev/null 2>&1
  log "node $NODE_NAME ready in $((SECONDS - begin))s (API https://$NODE_IP:$API_PORT, pods $POD_CIDR, logs $DIR/logs)"
  echo "$KUBECONFIG_FILE"
}

kill_proc() {
  local name="$1" pid
  [[ -f "$DIR/run/$name.pid" ]] || return 0
  pid="$(cat "$DIR/run/$name.pid")"
  if kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; then
    # Its whole process group (spawn makes it a session leader): a supervised process's
    # child goes with its supervisor.
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/run/$name.pid"
}

# Every container of the node's containerd: kill, delete, and release its network namespace.
remove_containers() {
  [[ -S "$SOCK" ]] && alive containerd || return 0
  local id netns
  for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  sleep 0.5
  for id in $(ctr_k8s containers ls -q 2>/dev/null); do
    netns="$(ctr_k8s containers info "$id" 2>/dev/null | python3 -c '
import json, sys
spec = json.load(sys.stdin).get("Spec") or {}
for ns in (spec.get("linux") or {}).get("namespaces") or []:
    if ns.get("type") == "network" and ns.get("path"): print(ns["path"])' 2>/dev/null || true)"
    ctr_k8s tasks delete -f "$id" >/dev/null 2>&1 || true
    ctr_k8s containers delete "$id" >/dev/null 2>&1 || true
    if [[ -n "$netns" && "$netns" == /var/run/netns/* || "$netns" == /run/netns/* ]]; then
      umount "$netns" 2>/dev/null || true
      rm -f "$netns"
    fi
  done
}

# The chains the kubelet makes for itself (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...), which
# `kube-proxy --cleanup` leaves: every KUBE-* chain, after the rules that jump to them.
remove_kube_chains() {
  local cmd table rule chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle; do
      { "$cmd" -t "$table" -S 2>/dev/null || true; } | awk '$1 == "-A" && $2 !~ /^KUBE-/ && / -j KUBE-/' | while read -r rule; do
        eval "$cmd -t $table ${rule/-A/-D}" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

stop() {
  [[ -d "$DIR" ]] || { log "not running"; return; }
  kill_proc kubelet
  remove_containers
  kill_proc containerd
  # Shims outlive containerd; this node's are the ones started with its socket as -address.
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "-address $SOCK "; then kill -9 "${p#/proc/}" 2>/dev/null || true; fi
  done
  if [[ -x "$BIN/kube-proxy-$KUBE_VERSION" ]] && alive kube-proxy; then
    kill_proc kube-proxy
    "$BIN/kube-proxy-$KUBE_VERSION" --cleanup >/dev/null 2>&1 || true
  fi
  kill_proc kube-proxy
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do kill_proc "$name"; done
  # Pod volumes and container root filesystems: deepest mounts first.
  { grep -F " $DIR/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  remove_kube_chains
  iptables -D FORWARD -j FICUS-NODE 2>/dev/null || true
  iptables -F FICUS-NODE 2>/dev/null || true
  iptables -X FICUS-NODE 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  if [[ -f "$DIR/run/ip_forward.orig" ]]; then cat "$DIR/run/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward; fi
  restore_inotify_limits
  rm -rf "$DIR"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) api_ready && node_ready ;;
  load) shift; alive containerd || die "the node is not running: scripts/node.sh start"; ctr_import "$@" ;;
  kubeconfig) echo "$KUBECONFIG_FILE" ;;
  env) echo "export KUBECONFIG=$KUBECONFIG_FILE" ;;
  *) echo "usage: $0 start|stop|status|load ARCHIVE...|kubeconfig|env" >&2; exit 2 ;;
esac
