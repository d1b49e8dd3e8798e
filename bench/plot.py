"""The reload-under-load plot of bench/run: requests per second (line) and
failed requests per second (red bars) for rsvisor and gunicorn, with the
HUPs marked. Plain SVG, no plotting library needed."""

PANEL_W, PANEL_H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 200, 70, 20, 30, 40


def _panel(name, data, y0, ymax):
    ok, errors, hups = data["ok"], data["errors"], data["hups"]
    n = max(len(ok), 1)
    w = PANEL_W - PAD_L - PAD_R
    h = PANEL_H - PAD_T - PAD_B
    x = lambda i: PAD_L + w * i / n  # noqa: E731
    y = lambda v: y0 + PAD_T + h - h * v / ymax  # noqa: E731
    out = [f'<text x="{PAD_L}" y="{y0 + 20}" font-size="14" font-weight="bold">{name}: '
           f'{data["total_ok"]:,} requests, {data["total_errors"]:,} failed</text>']
    # Axes and grid.
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        v = ymax * frac
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:,.0f}</text>')
    for i in range(0, n + 1, 5):
        out.append(f'<text x="{x(i):.1f}" y="{y0 + PANEL_H - PAD_B + 14}" font-size="10" text-anchor="middle">{i}s</text>')
    # HUPs.
    for t in hups:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y0 + PAD_T}" y2="{y0 + PAD_T + h}" '
                   f'stroke="#888" stroke-dasharray="4,3"/>')
        out.append(f'<text x="{x(t) + 2:.1f}" y="{y0 + PAD_T + 10}" font-size="9" fill="#666">HUP</text>')
    # Errors as bars (same scale, at least 2 px so one error shows).
    bw = w / n * 0.6
    for i, e in enumerate(errors):
        if e:
            top = min(y(e), y(0) - 2)
            out.append(f'<rect x="{x(i + 0.2):.1f}" y="{top:.1f}" width="{bw:.1f}" height="{y(0) - top:.1f}" '
                       f'fill="#d62728"><title>{e} failed</title></rect>')
    pts = " ".join(f"{x(i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(ok))
    out.append(f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    return out


def reload_svg(results, path):
    names = [n for n in ("rsvisor", "gunicorn") if n in results]
    ymax = max(max(results[n]["ok"] or [1]) for n in names) * 1.1 or 1
    height = PANEL_H * len(names) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_W}" height="{height}" '
             f'font-family="sans-serif" viewBox="0 0 {PANEL_W} {height}">',
             f'<rect width="{PANEL_W}" height="{height}" fill="white"/>']
    for i, n in enumerate(names):
        parts += _panel(n, results[n], i * PANEL_H, ymax)
    parts.append(f'<text x="{PAD_L}" y="{height - 8}" font-size="11" fill="#444">'
                 'blue: responses per second; red: failed requests per second; dashed: SIGHUP</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


COLORS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e"]
CW, CH, CL, CR, CT, CB = 560, 300, 70, 150, 36, 46


def curve_svg(title, xlabel, ylabel, series, path, log_x=True):
    """A line chart: `series` maps a name to [(x, y)] (y None = no point);
    x on a log scale when `log_x` (the scales of bench/run scale are
    1, 10, 100…). One colour per series, named at the right."""
    import math
    xs = sorted({x for pts in series.values() for x, y in pts if y is not None})
    ys = [y for pts in series.values() for _, y in pts if y is not None]
    if not xs or not ys:
        return
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)  # noqa: E731
    x0, x1 = fx(xs[0]), fx(xs[-1])
    span = (x1 - x0) or 1
    ymax = max(ys) * 1.1 or 1
    w, h = CW - CL - CR, CH - CT - CB
    px = lambda v: CL + w * (fx(v) - x0) / span  # noqa: E731
    py = lambda v: CT + h - h * v / ymax  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CW}" height="{CH}" '
           f'font-family="sans-serif" viewBox="0 0 {CW} {CH}">',
           f'<rect width="{CW}" height="{CH}" fill="white"/>',
           f'<text x="{CL}" y="20" font-size="13" font-weight="bold">{title}</text>']
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        v = ymax * frac
        out.append(f'<line x1="{CL}" x2="{CL + w}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>')
        label = f"{v:,.0f}" if ymax >= 10 else f"{v:.2f}"
        out.append(f'<text x="{CL - 6}" y="{py(v) + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{CT + h + 14}" font-size="10" text-anchor="middle">{x:,}</text>')
    out.append(f'<text x="{CL + w / 2:.0f}" y="{CH - 10}" font-size="11" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text x="14" y="{CT + h / 2:.0f}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 14 {CT + h / 2:.0f})">{ylabel}</text>')
    for i, (name, pts) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        pts = [(x, y) for x, y in pts if y is not None]
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}">'
                       f'<title>{name}: {y:,.2f} at {x:,}</title></circle>')
        ly = CT + 14 + 18 * i
        out.append(f'<line x1="{CL + w + 12}" x2="{CL + w + 30}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{CL + w + 34}" y="{ly}" font-size="11">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
