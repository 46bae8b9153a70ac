#!/bin/bash
# Manual runtime smoke of the built components (root), in one throwaway network namespace:
# etcd -> kube-apiserver v1.34 (self-signed cert, token auth, RBAC, dual-stack service ranges)
# -> Node, UDP Service and a Pod whose status is patched Ready like a kubelet would
# -> kube-controller-manager (EndpointSlice controller only) -> kube-proxy v1.31, then v1.34,
# in iptables mode, until the Service's KUBE-SEP rules appear. Not a test: the e2e harness
# owns that. Logs are copied to /tmp/k8s-rt-logs.
#   usage: e2e/k8s/runtime-smoke.sh "$(cargo xtask k8s --print-dir)"
set -u
D=${1:?usage: $0 BINARIES_DIR}; NS=ctr-k8s-rt-$$; W=/dev/shm/$NS; IP=192.0.2.10
mkdir -p $W/pki; PIDS=()
cleanup(){ for p in "${PIDS[@]}"; do kill $p 2>/dev/null; done; sleep 1; for p in "${PIDS[@]}"; do kill -9 $p 2>/dev/null; done; ip netns del $NS; rm -rf /tmp/k8s-rt-logs; cp -r $W /tmp/k8s-rt-logs 2>/dev/null; rm -rf $W; }
trap cleanup EXIT
ip netns add $NS; ip -n $NS link set lo up; ip -n $NS link add cp0 type veth peer name cp1; ip -n $NS addr add $IP/24 dev cp0; ip -n $NS link set cp0 up; ip -n $NS link set cp1 up
X="ip netns exec $NS"
T0=$(date +%s.%N)
$X $D/etcd/etcd --data-dir $W/etcd --listen-client-urls http://$IP:2379 --advertise-client-urls http://$IP:2379 --listen-peer-urls http://127.0.0.1:2380 --log-level=warn --unsafe-no-fsync >$W/etcd.log 2>&1 & PIDS+=($!)
openssl ecparam -name prime256v1 -genkey -noout -out $W/sa.key 2>/dev/null
echo 'admin-token,admin,admin,system:masters' > $W/tokens.csv
$X $D/v1.34/kube-apiserver --etcd-servers=http://$IP:2379 --bind-address=$IP --advertise-address=$IP --secure-port=6443 --cert-dir=$W/pki \
  --service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112 --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file=$W/sa.key --service-account-signing-key-file=$W/sa.key --token-auth-file=$W/tokens.csv --authorization-mode=RBAC \
  --disable-admission-plugins=ServiceAccount --enable-priority-and-fairness=false --profiling=false --v=2 >$W/apiserver.log 2>&1 & PIDS+=($!)
for i in $(seq 1 120); do $X curl -fsk -H 'Authorization: Bearer admin-token' https://$IP:6443/readyz >/dev/null 2>&1 && break; sleep 0.5; done
echo "apiserver ready after $(echo "$(date +%s.%N) - $T0" | bc) s: $($X curl -sk -H 'Authorization: Bearer admin-token' https://$IP:6443/version | tr -d ' \n' | cut -c1-60)"
cat > $W/kubeconfig <<K
{"apiVersion":"v1","kind":"Config","current-context":"t","clusters":[{"name":"t","cluster":{"server":"https://$IP:6443","certificate-authority":"$W/pki/apiserver.crt"}}],"users":[{"name":"a","user":{"token":"admin-token"}}],"contexts":[{"name":"t","context":{"cluster":"t","user":"a"}}]}
K
A=(-sk -H 'Authorization: Bearer admin-token' -H 'Content-Type: application/json')
$X curl "${A[@]}" -X POST https://$IP:6443/api/v1/nodes -d "{\"kind\":\"Node\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"node1\"},\"spec\":{\"podCIDR\":\"10.244.1.0/24\"},\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$IP\"}]}}" -o /dev/null -w 'node create %{http_code}\n'
$X curl "${A[@]}" -X POST https://$IP:6443/api/v1/namespaces/default/services -d '{"kind":"Service","apiVersion":"v1","metadata":{"name":"u"},"spec":{"selector":{"app":"u"},"ports":[{"protocol":"UDP","port":53,"targetPort":5353}]}}' -o /dev/null -w 'service create %{http_code}\n'
$X curl "${A[@]}" -X POST https://$IP:6443/api/v1/namespaces/default/pods -d '{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p1","labels":{"app":"u"}},"spec":{"nodeName":"node1","containers":[{"name":"c","image":"x"}]}}' -o /dev/null -w 'pod create %{http_code}\n'
$X curl -sk -H 'Authorization: Bearer admin-token' -X PATCH -H 'Content-Type: application/merge-patch+json' https://$IP:6443/api/v1/namespaces/default/pods/p1/status -d '{"status":{"phase":"Running","podIP":"10.244.1.10","podIPs":[{"ip":"10.244.1.10"}],"conditions":[{"type":"Ready","status":"True"}]}}' -o /dev/null -w 'pod status %{http_code}\n'
$X $D/v1.34/kube-controller-manager --kubeconfig=$W/kubeconfig --controllers=endpointslice-controller --leader-elect=false --use-service-account-credentials=false --secure-port=0 --v=2 >$W/kcm.log 2>&1 & PIDS+=($!)
for i in $(seq 1 60); do n=$($X curl -sk -H 'Authorization: Bearer admin-token' "https://$IP:6443/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name=u" | grep -c 10.244.1.10); [ "$n" -gt 0 ] && break; sleep 0.5; done
echo "endpointslice with pod IP: $n (after $(echo "$(date +%s.%N) - $T0" | bc) s)"
for v in v1.31 v1.34; do
  $X $D/$v/kube-proxy --kubeconfig=$W/kubeconfig --hostname-override=node1 --proxy-mode=iptables --cluster-cidr=10.244.0.0/16 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0s --conntrack-tcp-timeout-close-wait=0s --iptables-localhost-nodeports=false \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 --v=2 >$W/kube-proxy-$v.log 2>&1 & KP=$!; PIDS+=($KP)
  for i in $(seq 1 60); do $X iptables-save 2>/dev/null | grep -q 'KUBE-SEP.*default/u' && break; sleep 0.5; done
  echo "$v kube-proxy: iptables lines for default/u: $($X iptables-save | grep -c 'default/u'); alive: $(kill -0 $KP 2>/dev/null && echo yes || echo no); panics: $(grep -c -i panic $W/kube-proxy-$v.log)"
  kill $KP; wait $KP 2>/dev/null
  $X iptables-save | grep -q KUBE && $X iptables -t nat -F && $X iptables -t filter -F && $X iptables -t nat -X && $X iptables -t filter -X 2>/dev/null; $X iptables -t mangle -F 2>/dev/null; $X iptables -t mangle -X 2>/dev/null
done
