"""Choosing a PGM's number of pieces and breakpoints by BIC: ``breakpoints="auto"``
(docs/SPECIFICATION.md, section 3.6).

Candidate breakpoints are quantiles at :data:`CANDIDATE_LEVELS` (plus 0 when the data straddle it);
dynamic programming finds the best segmentation for each K, each K is refitted on the exact
likelihood, and the least ``BIC = -2 log L + (4K - 2) log n`` wins.
"""
import dataclasses
import warnings

import numpy as np

from refquant.density.em import (
    DegenerateDataError,
    _bin_centres,
    _bin_statistics,
    _em_fit_pieces,
    _fit_given_breakpoints,
    _histogram_cells,
    _runs_statistics,
    _sample_cells,
    _sigma_bound,
)

#: Quantile levels of the candidate breakpoints for ``breakpoints="auto"``: denser in the tails,
#: where the pieces of a weight distribution end.
CANDIDATE_LEVELS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                    0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.965, 0.98, 0.99, 0.995)


_QUANTILE_SUBSAMPLE = 65536


_SEARCH_MAX_ITER = 150


_SEARCH_TOL = 1e-6


def _candidate_breakpoints(values, cumulative_fraction=None):
    """Candidate breakpoints: quantiles at CANDIDATE_LEVELS, plus 0 when the values straddle it.

    ``values``: samples (then ``cumulative_fraction`` is None; a fixed subsample of 65536 values
    is used when there are more), or the inner bin edges of a histogram with the fraction of
    counts below each (then the edge nearest each quantile level is taken).
    """
    if cumulative_fraction is None:
        if values.size > _QUANTILE_SUBSAMPLE:
            values = values[np.random.default_rng(0).integers(0, values.size, _QUANTILE_SUBSAMPLE)]
        candidates = np.quantile(values, CANDIDATE_LEVELS)
        low, high = values.min(), values.max()
    else:
        nearest = np.abs(cumulative_fraction[:, None] - np.array(CANDIDATE_LEVELS)).argmin(axis=0)
        candidates = values[nearest]
        # 0 must be a bin edge with counts on both sides.
        at_zero = np.flatnonzero(values == 0.0)
        below = cumulative_fraction[at_zero[0]] if at_zero.size else 0.0
        low, high = (-1.0, 1.0) if 0.0 < below < 1.0 else (0.0, 0.0)
    if low < 0.0 < high:
        candidates = np.append(candidates, 0.0)
    return np.unique(candidates)


def _best_segmentations(edges, count, mean, var, n, max_pieces, options):
    """For K = 1..max_pieces, the breakpoints (a subset of the inner ``edges``) of maximum likelihood.

    ``count``, ``mean``, ``var``: (B,) exact statistics of the B cells between ``edges`` (B+1,).
    Every run of cells ``i..j-1`` holding at least ``min_piece_samples`` distinct values is fitted
    by EM as a piece ``[edges[i], edges[j])``; its score is its log-likelihood plus
    ``n_run log(n_run / n)`` (the mass term), and the score of a segmentation is the sum over its
    pieces, so the best one for each K follows by dynamic programming over the end of the last
    piece. Candidate pieces get at most ``_SEARCH_MAX_ITER`` EM steps (tolerance
    ``_SEARCH_TOL``): pieces that need more are poor fits (their samples are far from a truncated
    Gaussian, e.g. a piece across a leaky-ReLU kink, whose maximum lies at infinity), and the
    chosen breakpoints are refitted with the caller's ``max_iter`` and ``tol``.
    Returns a list of ``(K, breakpoints, log_likelihood)``.
    """
    n_cells = count.size
    run_count, run_mean, run_var = _runs_statistics(count, mean, var)
    search = _search_options(options)
    first, last = np.triu_indices(n_cells + 1, k=1)
    first, last = first[first < n_cells], last[first < n_cells]
    usable = (run_count[first, last] >= options.min_piece_samples) & (run_var[first, last] > 0)
    first, last = first[usable], last[usable]
    runs = np.arange(first.size)
    _, _, log_likelihood, *_ = _em_fit_pieces(
        edges[first], edges[last], runs, runs + 1, edges[first], edges[last],
        run_count[first, last], run_mean[first, last], run_var[first, last],
        np.zeros(first.size, dtype=bool), run_mean[first, last], run_var[first, last],
        _sigma_bound(count, mean, var) ** 2, search.max_iter, search.tol, search.accelerate,
        search.profile)
    score = np.full((n_cells + 1, n_cells + 1), -np.inf)
    pieces_count = run_count[first, last]
    score[first, last] = log_likelihood + pieces_count * np.log(pieces_count / n)
    # best[k, j]: best score covering cells 0..j-1 with k+1 pieces; origin[k, j]: start of the last.
    best = np.full((max_pieces, n_cells + 1), -np.inf)
    origin = np.zeros((max_pieces, n_cells + 1), dtype=np.int64)
    best[0] = score[0]
    for k in range(1, max_pieces):
        total = best[k - 1][:, None] + score  # [i, j]: k pieces up to i, then the piece i..j-1
        origin[k] = total.argmax(axis=0)
        best[k] = total.max(axis=0)
    results = []
    for k in range(max_pieces):
        if not np.isfinite(best[k, n_cells]):
            continue
        cuts, j = [], n_cells
        for level in range(k, 0, -1):
            j = origin[level, j]
            cuts.append(j)
        results.append((k + 1, edges[np.array(sorted(cuts), dtype=np.int64)], float(best[k, n_cells])))
    return results


def _chosen_by_bic(segmentations, refit, options):
    """Refit each K's best breakpoints with the exact likelihood and pick the least BIC.

    ``segmentations``: ``(K, breakpoints, _)`` rows of :func:`_best_segmentations`;
    ``refit(breakpoints, n_chosen_breakpoints, options) -> model``. The comparison fits use the
    search budget (``_SEARCH_MAX_ITER``, ``_SEARCH_TOL``) with their warnings held back; the
    chosen breakpoints are then fitted with the caller's options, and only that fit warns. The
    selection table (with the final fit's row) is attached to its ``fit_info``.
    """
    search = _search_options(options)
    trials = []
    for n_pieces, breakpoints, _ in segmentations:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trials.append(refit(breakpoints, n_pieces - 1, search))
    if not trials:  # no run of candidate cells could hold a piece (defensive: the input checks come first)
        raise DegenerateDataError("breakpoints='auto': no segmentation of the candidates holds a piece with "
                                  "min_piece_samples distinct values")
    best = min(range(len(trials)), key=lambda t: trials[t].fit_info.bic)
    chosen = refit(trials[best].breakpoints, trials[best].n_pieces - 1, options)
    trials[best] = chosen
    selection = tuple((m.n_pieces, tuple(m.breakpoints.tolist()), m.fit_info.log_likelihood,
                       m.fit_info.bic) for m in trials)
    chosen.fit_info = dataclasses.replace(chosen.fit_info, selection=selection)
    return chosen


def _search_options(options):
    return dataclasses.replace(options, max_iter=min(options.max_iter, _SEARCH_MAX_ITER),
                               tol=max(options.tol, _SEARCH_TOL), profile=False)


def _fit_auto_samples(x, max_pieces, options, caller):
    candidates = _candidate_breakpoints(x)
    count, mean, var = _bin_statistics(x, candidates)
    edges = np.concatenate([[-np.inf], candidates, [np.inf]])

    def refit(breakpoints, n_chosen, fit_options):
        cells = _merged_cells(edges, count, mean, var, breakpoints)
        return _fit_given_breakpoints(breakpoints, cells, "samples", fit_options, caller,
                                      n_chosen_breakpoints=n_chosen)
    return _chosen_by_bic(_best_segmentations(edges, count, mean, var, x.size, max_pieces, options),
                          refit, options)


def _merged_cells(edges, count, mean, var, breakpoints):
    """Exact cells of the pieces cut at ``breakpoints`` (a subset of ``edges``), pooled from the
    cells between ``edges``."""
    run_count, run_mean, run_var = _runs_statistics(count, mean, var)
    cut = np.searchsorted(edges, np.concatenate([[-np.inf], breakpoints, [np.inf]]))
    return _sample_cells(run_count[cut[:-1], cut[1:]], run_mean[cut[:-1], cut[1:]],
                         run_var[cut[:-1], cut[1:]], edges[cut])


def _fit_auto_histogram(counts, bin_edges, max_pieces, options, caller):
    inner = bin_edges[1:-1]
    fraction_below = np.cumsum(counts)[:-1] / counts.sum()
    candidates = _candidate_breakpoints(inner, fraction_below)
    # Search cells: the bins between consecutive candidates, every value at its bin's centre.
    edges = np.concatenate([[bin_edges[0]], candidates, [bin_edges[-1]]])
    first_bin = np.searchsorted(bin_edges, edges[:-1])
    centre = _bin_centres(bin_edges)
    cell = np.searchsorted(candidates, bin_edges[:-1], side="right")
    count = np.add.reduceat(counts, first_bin)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nan_to_num(np.add.reduceat(counts * centre, first_bin) / count)
        var = np.nan_to_num(np.add.reduceat(counts * (centre - mean[cell]) ** 2, first_bin) / count)
    search_edges = np.concatenate([[-np.inf], candidates, [np.inf]])
    cells = _histogram_cells(counts, bin_edges)

    def refit(breakpoints, n_chosen, fit_options):
        return _fit_given_breakpoints(breakpoints, cells, "histogram", fit_options, caller,
                                      n_chosen_breakpoints=n_chosen)
    segmentations = _best_segmentations(search_edges, count, mean, var, counts.sum(), max_pieces,
                                        options)
    return _chosen_by_bic(segmentations, refit, options)
