#!/usr/bin/env python3
"""A small CRI (runtime.v1) client for vpcnet's containerd test and benchmark.

It speaks to containerd's CRI plugin the way kubelet does for pod sandboxes; containerd then
runs the CNI plugins. No crictl (Debian 12 does not package it).

usage: cri_client.py SOCK COMMAND [ARGS]     (every command prints one JSON document)
  version                       runtime name/version
  status                        runtime conditions (RuntimeReady, NetworkReady)
  wait-ready SECS               until NetworkReady (a CNI config is loaded) or fail
  run NAME NS [HOST:CTR]        RunPodSandbox (optional TCP port mapping) -> {id, ms}
  podstatus ID                  PodSandboxStatus -> {id, state, ip, netns, cni_result, ...}
  stop ID | rm ID               StopPodSandbox / RemovePodSandbox -> {ms}
  list                          ListPodSandbox
  cleanup                       stop + remove every sandbox
  bench N PREFIX                N x RunPodSandbox, then N x (StopPodSandbox, RemovePodSandbox);
                                every latency in ms, plus each sandbox's IP
  bench-mix N PREFIX SOCK...    the same, N pods on each of SOCK and the further SOCKs, taken
                                in turn (pod 1 on each, then pod 2 on each, ...), so every
                                runtime sees the same moments of the machine: a list of `bench`
                                documents, one per socket, in the order given
  image OUT.tar NAME            (no SOCK needed: pass '-') build the sandbox ("pause") image as an
                                OCI archive from /bin/busybox (busybox-static), for `ctr import`

Needs grpcio and grpcio-tools. The Python stubs are generated on first use from
cri_subset.proto (beside this file) into $VPCNET_CRI_GEN, default /tmp/vpcnet-cri-gen/<hash>.
"""
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, 'cri_subset.proto')


def load_stubs():
    """Imports (generating first if needed) the stubs for cri_subset.proto."""
    with open(PROTO, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    gen = os.environ.get('VPCNET_CRI_GEN') or os.path.join('/tmp/vpcnet-cri-gen', digest)
    if not os.path.exists(os.path.join(gen, 'cri_subset_pb2_grpc.py')):
        from grpc_tools import protoc  # only needed the first time
        tmp = '%s.tmp%d' % (gen, os.getpid())
        os.makedirs(tmp, exist_ok=True)
        rc = protoc.main(['protoc', '-I' + HERE, '--python_out=' + tmp, '--grpc_python_out=' + tmp, PROTO])
        if rc != 0:
            sys.exit('protoc failed on %s (rc %d)' % (PROTO, rc))
        os.makedirs(os.path.dirname(gen), exist_ok=True)
        try:
            os.rename(tmp, gen)  # atomic: a concurrent run may have won, which is fine
        except OSError:
            pass
    sys.path.insert(0, gen)
    import cri_subset_pb2 as pb
    import cri_subset_pb2_grpc as pbg
    return pb, pbg


def build_image(out, name):
    """An OCI image archive: one layer with /bin/busybox and /bin/sleep -> busybox."""
    with open('/bin/busybox', 'rb') as f:
        bb = f.read()

    def blob(data):
        return hashlib.sha256(data).hexdigest()

    lbuf = io.BytesIO()
    with tarfile.open(fileobj=lbuf, mode='w', format=tarfile.PAX_FORMAT) as t:
        d = tarfile.TarInfo('bin')
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        t.addfile(d)
        fi = tarfile.TarInfo('bin/busybox')
        fi.size, fi.mode = len(bb), 0o755
        t.addfile(fi, io.BytesIO(bb))
        ln = tarfile.TarInfo('bin/sleep')
        ln.type, ln.linkname = tarfile.SYMTYPE, 'busybox'
        t.addfile(ln)
    layer = lbuf.getvalue()
    config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                         'config': {'Entrypoint': ['/bin/sleep', '2147483647']},
                         'rootfs': {'type': 'layers', 'diff_ids': ['sha256:' + blob(layer)]}}).encode()
    manifest = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                           'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                                      'digest': 'sha256:' + blob(config), 'size': len(config)},
                           'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar',
                                       'digest': 'sha256:' + blob(layer), 'size': len(layer)}]}).encode()
    index = json.dumps({'schemaVersion': 2, 'manifests': [
        {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': 'sha256:' + blob(manifest),
         'size': len(manifest), 'annotations': {'io.containerd.image.name': name}}]}).encode()
    files = [('oci-layout', b'{"imageLayoutVersion":"1.0.0"}'), ('index.json', index)]
    files += [('blobs/sha256/' + blob(b), b) for b in (layer, config, manifest)]
    tmp = out + '.tmp'
    with tarfile.open(tmp, 'w') as t:
        for n, data in files:
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    os.rename(tmp, out)


class Cri:
    def __init__(self, sock):
        import grpc
        self.pb, pbg = load_stubs()
        self.s = pbg.RuntimeServiceStub(grpc.insecure_channel('unix://' + sock))
        self.logdir = os.environ.get('CRI_LOGDIR', os.path.join(os.path.dirname(sock), 'podlogs'))

    def run(self, name, ns, port=None):
        pb = self.pb
        cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=ns, uid=str(uuid.uuid4()), attempt=0),
            hostname=name,
            log_directory=os.path.join(self.logdir, ns + '_' + name),
            linux=pb.LinuxPodSandboxConfig(),
        )
        if port:
            host, ctr = port.split(':')
            cfg.port_mappings.append(pb.PortMapping(protocol=pb.TCP, container_port=int(ctr), host_port=int(host)))
        t = time.perf_counter()
        r = self.s.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=120)
        return r.pod_sandbox_id, (time.perf_counter() - t) * 1000

    def timed(self, rpc, req):
        t = time.perf_counter()
        rpc(req, timeout=120)
        return (time.perf_counter() - t) * 1000

    def stop(self, pid):
        return self.timed(self.s.StopPodSandbox, self.pb.StopPodSandboxRequest(pod_sandbox_id=pid))

    def rm(self, pid):
        return self.timed(self.s.RemovePodSandbox, self.pb.RemovePodSandboxRequest(pod_sandbox_id=pid))

    def podstatus(self, pid):
        pb = self.pb
        r = self.s.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pid, verbose=True), timeout=30)
        st = r.status
        out = {'id': st.id, 'state': pb.PodSandboxState.Name(st.state), 'ip': st.network.ip,
               'additional_ips': [p.ip for p in st.network.additional_ips],
               'name': st.metadata.name, 'namespace': st.metadata.namespace, 'uid': st.metadata.uid,
               'netns': '', 'cni_result': None}
        try:
            info = json.loads(r.info.get('info', '{}'))
        except ValueError:
            info = {}
        for n in info.get('runtimeSpec', {}).get('linux', {}).get('namespaces', []):
            if n.get('type') == 'network':
                out['netns'] = n.get('path', '')
        out['cni_result'] = info.get('cniResult')
        return out

    def list(self):
        pb = self.pb
        items = self.s.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
        return [{'id': p.id, 'name': p.metadata.name, 'namespace': p.metadata.namespace,
                 'state': pb.PodSandboxState.Name(p.state)} for p in items]

    def status(self):
        r = self.s.Status(self.pb.StatusRequest(verbose=False), timeout=30)
        return {c.type: {'status': c.status, 'reason': c.reason, 'message': c.message}
                for c in r.status.conditions}


def bench_mix(socks, n, prefix):
    """`bench` on several runtimes at once, their pods interleaved (see the usage)."""
    cs = [Cri(s) for s in socks]
    ids = [[] for _ in cs]
    run = [[] for _ in cs]
    for i in range(n):
        for k, c in enumerate(cs):
            pid, ms = c.run('%s%d-%d' % (prefix, k, i), 'bench')
            ids[k].append(pid)
            run[k].append(ms)
    out = []
    for k, c in enumerate(cs):
        ips = [c.podstatus(pid)['ip'] for pid in ids[k]]
        out.append({'n': n, 'run_ms': run[k], 'ips': ips, 'stop_ms': [], 'remove_ms': []})
    for i in range(n):
        for k, c in enumerate(cs):
            out[k]['stop_ms'].append(c.stop(ids[k][i]))
            out[k]['remove_ms'].append(c.rm(ids[k][i]))
    r2 = lambda v: [round(x, 2) for x in v]
    for o in out:
        for key in ('run_ms', 'stop_ms', 'remove_ms'):
            o[key] = r2(o[key])
    return out


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    sock, cmd, args = argv[1], argv[2], argv[3:]
    if cmd == 'image':
        build_image(args[0], args[1])
        print(json.dumps({'image': args[1], 'archive': args[0]}))
        return
    if cmd == 'bench-mix':
        print(json.dumps(bench_mix([sock] + args[2:], int(args[0]), args[1])))
        return
    c = Cri(sock)
    if cmd == 'version':
        r = c.s.Version(c.pb.VersionRequest(version='v1'), timeout=30)
        res = {'runtime_name': r.runtime_name, 'runtime_version': r.runtime_version,
               'runtime_api_version': r.runtime_api_version}
    elif cmd == 'status':
        res = c.status()
    elif cmd == 'wait-ready':
        end = time.time() + float(args[0])
        while True:
            try:
                res = c.status()
            except Exception as e:  # socket not up yet
                res = {'error': str(e)}
            if res.get('NetworkReady', {}).get('status'):
                break
            if time.time() > end:
                print(json.dumps(res))
                sys.exit('NetworkReady not true within %s s' % args[0])
            time.sleep(0.1)
    elif cmd == 'run':
        pid, ms = c.run(args[0], args[1], args[2] if len(args) > 2 else None)
        res = {'id': pid, 'ms': round(ms, 2)}
    elif cmd == 'podstatus':
        res = c.podstatus(args[0])
    elif cmd == 'stop':
        res = {'ms': round(c.stop(args[0]), 2)}
    elif cmd == 'rm':
        res = {'ms': round(c.rm(args[0]), 2)}
    elif cmd == 'list':
        res = c.list()
    elif cmd == 'cleanup':
        ids = [p['id'] for p in c.list()]
        for pid in ids:
            c.stop(pid)
            c.rm(pid)
        res = {'removed': ids}
    elif cmd == 'bench':
        n, prefix = int(args[0]), args[1]
        ids, run, stop, rm, ips = [], [], [], [], []
        for i in range(n):
            pid, ms = c.run('%s%d' % (prefix, i), 'bench')
            ids.append(pid)
            run.append(ms)
        for pid in ids:
            ips.append(c.podstatus(pid)['ip'])
        for pid in ids:
            stop.append(c.stop(pid))
            rm.append(c.rm(pid))
        r2 = lambda v: [round(x, 2) for x in v]
        res = {'n': n, 'run_ms': r2(run), 'stop_ms': r2(stop), 'remove_ms': r2(rm), 'ips': ips}
    else:
        sys.exit(__doc__)
    print(json.dumps(res))


if __name__ == '__main__':
    main(sys.argv)
