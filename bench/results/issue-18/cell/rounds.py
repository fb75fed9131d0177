import json,sys,statistics as st
for fn in sys.argv[1:]:
    d=json.load(open(fn))
    print(fn, d.get('started'))
    pts={}
    for c in d['cells']:
        p=c['point']; k=(p['conns'],p['size'],p['pipeline'])
        pts.setdefault(k,{})[c['impl']]=c['rounds']
    for k,v in pts.items():
        print("%s×%s×%s" % k)
        for impl,rs in v.items():
            print("  %-18s cpu %s  user %s  tput(k) %s  p99 %s" % (impl,
              " ".join("%6.2f"%r['server_cpu_us_per_msg'] for r in rs),
              " ".join("%5.2f"%r['server_user_us_per_msg'] for r in rs),
              " ".join("%6.0f"%(r['msgs_per_s']/1e3) for r in rs),
              " ".join("%6.0f"%r['p99_us'] for r in rs)))
        if 'ioactor-ack@base' in v and 'ioactor-ack' in v:
            a=v['ioactor-ack']; b=v['ioactor-ack@base']
            rc=[x['server_cpu_us_per_msg']/y['server_cpu_us_per_msg'] for x,y in zip(a,b)]
            ru=[x['server_user_us_per_msg']/y['server_user_us_per_msg'] for x,y in zip(a,b)]
            print("  new÷base per round: cpu %s (median %.2f)  user %s (median %.2f)" % (" ".join("%.2f"%x for x in rc), st.median(rc), " ".join("%.2f"%x for x in ru), st.median(ru)))
