"""Estimated voice quality: the ITU-T G.107 E-model for a G.711 call over the measured path.

An estimate, not a listening test: R = Ro − Is − Id − Ie,eff + A (G.107 §7) with every parameter at its
G.107 default except the three the network sets: the mouth-to-ear delay, the packet loss, and the
de-jitter buffer's share of the delay.

- Ro and Is come from the default parameters (SLR 8, RLR 2, STMR 15, LSTR 18, Ds = Dr = 3, Nc −70 dBm0p,
  Nfor −64 dBmp, Ps = Pr = 35 dB(A), qdu 1); they give Ro = 94.77 and Is = 1.41 (G.107 §7.2, §7.3).
- Id = Idte + Idle + Idd (G.107 §7.4), talker and listener echo with TELR 65 dB and WEPL 110 dB, with
  T = Ta = the effective one-way delay and Tr = 2·T, and the absolute delay term Idd with mT = 100 ms,
  sT = 1. At zero delay Id = 0.15, so a perfect path gives the familiar R = 93.2 (G.107 §7.7).
- Ie,eff = Ie + (95 − Ie)·Ppl / (Ppl/BurstR + Bpl) (G.107 §7.5), with G.113 Appendix I, Table I.3 for
  G.711 with packet loss concealment: Ie = 0, Bpl = 25.1; random loss, BurstR = 1. Ppl in percent.
- A = 0 (advantage factor of wired access).
- Jitter: a receiver plays out through a de-jitter buffer that holds packets for about twice the mean
  jitter, so twice the jitter is added to the one-way delay (the "effective latency" of Cole and
  Rosenbluth, "Voice over IP performance monitoring", ACM SIGCOMM CCR 31(2), 2001). Packets that a real
  buffer would still discard are not modelled: they would add to the loss.
- MOS from R per G.107 Annex B (B.4): 1 below R = 0, 4.5 above 100, else
  1 + 0.035·R + R·(R − 60)·(100 − R)·7·10⁻⁶.
"""

from __future__ import annotations

import math

__all__ = ["absolute_delay_impairment", "delay_impairment", "mos_from_r", "r_factor", "voice_figures"]

# G.107 Table 1 defaults (dB, dBm0p, dB(A), ms) of the parameters the network does not set.
_SLR, _RLR, _STMR, _LSTR, _DS = 8.0, 2.0, 15.0, 18.0, 3.0
_NC, _NFOR, _PS, _PR, _QDU = -70.0, -64.0, 35.0, 35.0, 1.0
_TELR, _WEPL, _ADVANTAGE = 65.0, 110.0, 0.0
_MT_MS, _ST = 100.0, 1.0  # Idd: minimum perceivable delay and delay sensitivity, "default" class
# G.113 Appendix I, Table I.3: G.711 with packet loss concealment (Appendix I of G.711), random loss.
_IE_G711, _BPL_G711_PLC, _BURST_R = 0.0, 25.1, 1.0
_JITTER_BUFFER_FACTOR = 2.0  # the de-jitter buffer holds twice the mean jitter


def _power_sum_db(*levels: float) -> float:
    return 10.0 * math.log10(sum(math.pow(10.0, level / 10.0) for level in levels))


def _noise_floor() -> float:
    """No (dBm0p): circuit, room and noise-floor noise power-added (G.107 §7.2)."""
    olr = _SLR + _RLR
    nos = _PS - _SLR - _DS - 100.0 + 0.004 * (_PS - olr - _DS - 14.0) ** 2
    pre = _PR + 10.0 * math.log10(1.0 + math.pow(10.0, (10.0 - _LSTR) / 10.0))
    nor = _RLR - 121.0 + pre + 0.008 * (pre - 35.0) ** 2
    return _power_sum_db(_NC, nos, nor, _NFOR + _RLR)


_NO = _noise_floor()
_RO = 15.0 - 1.5 * (_SLR + _NO)


def _simultaneous_impairment() -> float:
    """Is: loudness, sidetone and quantizing impairments (G.107 §7.3) at T = 0 (the echo term is negligible)."""
    olr = _SLR + _RLR
    x_olr = olr + 0.2 * (64.0 + _NO - _RLR)
    i_olr = 20.0 * (math.pow(1.0 + (x_olr / 8.0) ** 8, 1.0 / 8.0) - x_olr / 8.0)
    stmro = -10.0 * math.log10(math.pow(10.0, -_STMR / 10.0) + math.pow(10.0, -_TELR / 10.0))
    i_st = (
        12.0 * math.pow(1.0 + ((stmro - 13.0) / 6.0) ** 8, 1.0 / 8.0)
        - 28.0 * math.pow(1.0 + ((stmro + 1.0) / 19.4) ** 35, 1.0 / 35.0)
        - 13.0 * math.pow(1.0 + ((stmro - 3.0) / 33.0) ** 13, 1.0 / 13.0)
        + 29.0
    )
    q = 37.0 - 15.0 * math.log10(_QDU)
    g = 1.07 + 0.258 * q + 0.0602 * q**2
    y = (_RO - 100.0) / 15.0 + 46.0 / 8.4 - g / 9.0
    z = 46.0 / 30.0 - g / 40.0
    i_q = 15.0 * math.log10(1.0 + math.pow(10.0, y) + math.pow(10.0, z))
    return i_olr + i_st + i_q


_IS = _simultaneous_impairment()


def absolute_delay_impairment(ta_ms: float) -> float:
    """Idd (G.107 §7.4): zero up to mT, then the curve that reaches about 3 at 200 ms and 24 at 400 ms."""
    if ta_ms <= _MT_MS:
        return 0.0
    x = math.log10(ta_ms / _MT_MS) / math.log10(2.0)
    six_s = 6.0 * _ST
    root = 1.0 / six_s
    return 25.0 * (
        math.pow(1.0 + math.pow(x, six_s), root) - 3.0 * math.pow(1.0 + math.pow(x / 3.0, six_s), root) + 2.0
    )


def delay_impairment(one_way_delay_ms: float) -> float:
    """Id = Idte + Idle + Idd (G.107 §7.4) for a mouth-to-ear delay in milliseconds (T = Ta, Tr = 2T)."""
    t = one_way_delay_ms
    # Talker echo: the echo returns after 2T, attenuated by TELR.
    terv = _TELR - 40.0 * math.log10((1.0 + t / 10.0) / (1.0 + t / 150.0)) + 6.0 * math.exp(-0.3 * t**2)
    roe = -1.5 * (_NO - _RLR)
    re = 80.0 + 2.5 * (terv - 14.0)
    idte = ((roe - re) / 2.0 + math.sqrt((roe - re) ** 2 / 4.0 + 100.0) - 1.0) * (1.0 - math.exp(-t))
    # Listener echo: a second reflection, round trip Tr = 2T, weighted echo path loss WEPL.
    rle = 10.5 * (_WEPL + 7.0) * math.pow(2.0 * t + 1.0, -0.25)
    idle = (_RO - rle) / 2.0 + math.sqrt((_RO - rle) ** 2 / 4.0 + 169.0)
    return idte + idle + absolute_delay_impairment(t)


def _effective_equipment_impairment(loss_percent: float) -> float:
    return _IE_G711 + (95.0 - _IE_G711) * loss_percent / (loss_percent / _BURST_R + _BPL_G711_PLC)


def r_factor(one_way_delay_seconds: float, jitter_seconds: float, loss_ratio: float) -> float:
    """Transmission rating R (0..100-ish) for a G.711 call; delay and jitter in seconds, loss 0..1."""
    for name, value in (
        ("one_way_delay_seconds", one_way_delay_seconds),
        ("jitter_seconds", jitter_seconds),
        ("loss_ratio", loss_ratio),
    ):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if loss_ratio > 1:
        raise ValueError(f"loss_ratio must be at most 1, got {loss_ratio!r}")
    effective_delay_ms = 1000.0 * (one_way_delay_seconds + _JITTER_BUFFER_FACTOR * jitter_seconds)
    id_ = delay_impairment(effective_delay_ms)
    ie_eff = _effective_equipment_impairment(100.0 * loss_ratio)
    return _RO - _IS - id_ - ie_eff + _ADVANTAGE


def mos_from_r(r: float) -> float:
    """Estimated MOS (conversational quality, 1..4.5) from R, G.107 Annex B."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6


def voice_figures(one_way_delay_seconds: float, jitter_seconds: float, loss_ratio: float) -> dict[str, float]:
    """{"r_factor": R, "mos": MOS}: the E-model estimate for a G.711 call with PLC over this path."""
    r = r_factor(one_way_delay_seconds, jitter_seconds, loss_ratio)
    return {"r_factor": r, "mos": mos_from_r(r)}
