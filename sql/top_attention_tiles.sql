-- purpose: Against a run or prediction directory: the k tiles per gene with the highest attention within their bag.
-- grain: one row per gene and rank (k per gene), highest first
-- params: $model varchar: the attention model in the run (e.g. mil)
--         $gene varchar: one gene, or null (an empty string on the command line) for every gene
--         $rank_by varchar: 'relative' (attention × tiles in the bag) or 'percentile' (percentile within the bag)
--         $k integer: tiles per gene
-- columns: gene, rank, bag_id, slide_id, tile_id, x, y, w, h (level-0 px), fold, n_bag_tiles, attention,
--          relative_attention, bag_percentile, attention_logit, tile_pred
-- Attention is softmax-normalised within each bag, so raw values favour the tiles of small bags. Both rankings
-- are within the bag: relative_attention = attention × n_bag_tiles (1 = uniform weight; compares across bags of
-- any size), bag_percentile = the percentile rank of the attention of the tile within its bag (0–100; the top
-- tile of every bag has 100, so 'percentile' ranks the top tiles of all bags first, ties broken by relative
-- attention).
-- It ranks the attention rows as the run wrote them (_attention_rows: the attention view without w and h), and joins
-- w and h (_run_tile_sizes) to the chosen tiles only: no step joins every row to the tiles of the store.
with model_attention as (
    select
        a.gene,
        a.bag_id,
        a.slide_id,
        a.tile_id,
        a.x,
        a.y,
        a.fold,
        a.attention,
        a.attention_logit,
        a.tile_pred
    from _attention_rows as a
    where a.model = $model and (nullif($gene, '') is null or a.gene = $gene)
),

bags as (
    select
        m.gene,
        m.bag_id,
        count(*) as n_bag_tiles
    from model_attention as m
    group by m.gene, m.bag_id
),

scored as (
    select
        m.*,
        b.n_bag_tiles,
        m.attention * b.n_bag_tiles as relative_attention
    from model_attention as m
    inner join bags as b on m.gene = b.gene and m.bag_id = b.bag_id
),

-- 'percentile' ranks on every tile's percentile within its bag (a window over every tile of the gene)
percentiles as (
    select
        s.*,
        100.0 * percent_rank() over (partition by s.gene, s.bag_id order by s.attention) as bag_percentile
    from scored as s
    where $rank_by = 'percentile'
),

-- each tile's score for the ranking: its relative attention, or its percentile within its bag
candidates as (
    select
        s.*,
        null::double as bag_percentile,
        s.relative_attention as rank_score
    from scored as s
    where $rank_by = 'relative'
    union all
    select
        p.*,
        p.bag_percentile as rank_score
    from percentiles as p
),

-- each gene's k-th highest score: a top-k aggregate per gene, no sort or window over every tile
kth as (
    select
        c.gene,
        list_min(max(c.rank_score, $k::integer)) as kth_score
    from candidates as c
    group by c.gene
),

-- the tiles at or above their gene's k-th highest score (ties kept): the ranking below sorts these only
shortlist as (
    select c.*
    from candidates as c
    inner join kth as t on c.gene = t.gene
    where c.rank_score >= t.kth_score
),

ranked as (
    select
        c.*,
        row_number() over (
            partition by c.gene
            order by c.rank_score desc, c.relative_attention desc, c.bag_id, c.slide_id, c.tile_id
        ) as rank
    from shortlist as c
    where case
        when $rank_by in ('relative', 'percentile') then true
        else error('rank_by must be relative or percentile, got ' || $rank_by)
    end
),

top as (
    select r.*
    from ranked as r
    where r.rank <= $k::integer
),

-- a chosen tile's percentile within its bag where the ranking did not compute it ('relative'): percent_rank, the
-- tiles of lower attention / (tiles − 1)
percentile_of_top as (
    select
        t.gene,
        t.rank,
        coalesce(100.0 * (count(m.attention) / nullif(any_value(t.n_bag_tiles) - 1, 0)), 0.0) as bag_percentile
    from top as t
    left join model_attention as m
        on m.gene = t.gene and m.bag_id = t.bag_id and m.attention < t.attention
    where t.bag_percentile is null
    group by t.gene, t.rank
)

select
    r.gene,
    r.rank,
    r.bag_id,
    r.slide_id,
    r.tile_id,
    r.x,
    r.y,
    s.w,
    s.h,
    r.fold,
    r.n_bag_tiles,
    r.attention,
    r.relative_attention,
    coalesce(r.bag_percentile, p.bag_percentile) as bag_percentile,
    r.attention_logit,
    r.tile_pred
from top as r
left join percentile_of_top as p on r.gene = p.gene and r.rank = p.rank
left join _run_tile_sizes as s on s.slide_id = r.slide_id and s.tile_id = r.tile_id
order by r.gene, r.rank;
