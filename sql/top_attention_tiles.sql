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
with model_attention as (
    select
        a.gene,
        a.bag_id,
        a.slide_id,
        a.tile_id,
        a.x,
        a.y,
        a.w,
        a.h,
        a.fold,
        a.attention,
        a.attention_logit,
        a.tile_pred
    from attention as a
    where a.model = $model and (nullif($gene, '') is null or a.gene = $gene)
),

scored as (
    select
        m.*,
        count(*) over (partition by m.gene, m.bag_id) as n_bag_tiles,
        m.attention * count(*) over (partition by m.gene, m.bag_id) as relative_attention,
        100.0 * percent_rank() over (partition by m.gene, m.bag_id order by m.attention) as bag_percentile
    from model_attention as m
),

chosen as (
    select
        s.*,
        case $rank_by
            when 'relative' then s.relative_attention
            when 'percentile' then s.bag_percentile
            else error('rank_by must be relative or percentile, got ' || $rank_by)
        end as rank_score
    from scored as s
),

ranked as (
    select
        c.*,
        row_number() over (
            partition by c.gene
            order by c.rank_score desc, c.relative_attention desc, c.bag_id, c.slide_id, c.tile_id
        ) as rank
    from chosen as c
)

select
    r.gene,
    r.rank,
    r.bag_id,
    r.slide_id,
    r.tile_id,
    r.x,
    r.y,
    r.w,
    r.h,
    r.fold,
    r.n_bag_tiles,
    r.attention,
    r.relative_attention,
    r.bag_percentile,
    r.attention_logit,
    r.tile_pred
from ranked as r
where r.rank <= $k::integer
order by r.gene, r.rank;
