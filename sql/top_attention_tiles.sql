-- purpose: Against a run: the k tiles with the highest attention per gene, with coordinates (for galleries).
-- grain: one row per gene and rank (k per gene), highest attention first
-- params: $model varchar: the MIL model name in the run (e.g. mil)
--         $k integer: tiles per gene
-- columns: gene, rank, bag_id, slide_id, tile_id, x, y, fold, attention, attention_logit, tile_pred
-- Attention is softmax-normalised within each bag, so a small bag's tiles score higher; rank within a bag with
-- `partition by gene, bag_id` for per-bag galleries.
with model_attention as (
    select a.gene, a.bag_id, a.slide_id, a.tile_id, a.x, a.y, a.fold, a.attention, a.attention_logit, a.tile_pred
    from attention as a
    where a.model = $model
),

ranked as (
    select
        m.*,
        row_number() over (partition by m.gene order by m.attention desc, m.bag_id, m.slide_id, m.tile_id) as rank
    from model_attention as m
)

select r.gene, r.rank, r.bag_id, r.slide_id, r.tile_id, r.x, r.y, r.fold, r.attention, r.attention_logit, r.tile_pred
from ranked as r
where r.rank <= $k::integer
order by r.gene, r.rank;
