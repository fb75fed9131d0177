import json,sys
cells={}
for fn in sys.argv[1:]:
    for c in json.load(open(fn))['cells']:
        p=c['point']; cells.setdefault((p['conns'],p['size'],p['pipeline']),{})[c['impl']]=c['median']
def sz(s): return "64 B" if s==64 else "4 KiB"
def b(x,ok): return "**%.2f**"%x if ok else "%.2f"%x
cpu=tp=p99=0; n99=0; mainok=0; basecpu=basetp=basep99=0
rows=[]
for k in sorted(cells):
    v=cells[k]; o=v['ioactor-ack']; m=v['ioactor-ack@base']; g=v['gnet']; n=v['net']
    c=lambda x: x['server_cpu_us_per_msg']
    cg,cn=c(o)/c(g),c(o)/c(n); tg,tn=o['msgs_per_s']/g['msgs_per_s'],o['msgs_per_s']/n['msgs_per_s']; pg,pn=o['p99_us']/g['p99_us'],o['p99_us']/n['p99_us']
    okc=cg<=0.95 and cn<=0.95; okt=tg>=1 and tn>=1; okp=pg<=1 and pn<=1
    cpu+=okc; tp+=okt
    if k[0]>1: n99+=1; p99+=okp
    bc=c(m)/c(g)<=0.95 and c(m)/c(n)<=0.95; bt=m['msgs_per_s']>=g['msgs_per_s'] and m['msgs_per_s']>=n['msgs_per_s']; bp=m['p99_us']<=g['p99_us'] and m['p99_us']<=n['p99_us']
    basecpu+=bc; basetp+=bt
    if k[0]>1: basep99+=bp
    mainok+= c(o)<=c(m)
    a=o['server_allocs_per_msg']
    rows.append("| %d × %s × %d | %.2f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %s |" % (k[0],sz(k[1]),k[2],c(o),c(m),c(o)/c(m),b(cg,okc),b(cn,okc),b(tg,okt),b(tn,okt),b(pg,okp and k[0]>1),b(pn,okp and k[0]>1),"0" if a==0 else "%.3f"%a))
print("| conns × size × in flight | ours CPU µs/msg | main CPU µs/msg | CPU ÷ main | CPU ÷ gnet | CPU ÷ net | msgs/s ÷ gnet | msgs/s ÷ net | p99 ÷ gnet | p99 ÷ net | allocs/msg |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
print("\n".join(rows))
print("\naims met: CPU ≤ 0.95× both at %d/%d points; throughput ≥ both at %d/%d; p99 ≤ both at %d/%d points with 64 or 1,000 connections; CPU ≤ main's at %d/%d" % (cpu,len(rows),tp,len(rows),p99,n99,mainok,len(rows)))
print("main's binary in the same run: CPU %d, throughput %d, p99 %d of %d" % (basecpu,basetp,basep99,n99))
