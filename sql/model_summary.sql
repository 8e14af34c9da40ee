-- purpose: Against a run: each model's pooled performance over genes (how many are well predicted, median r).
-- grain: one row per model
-- params: none
-- columns: model, n_genes, n_well_predicted, median_pearson_r, mean_pearson_r, median_spearman_rho, median_r2,
--          median_rmse_ratio
-- Pooled rows only (fold = -1: all held-out predictions together). rmse_ratio = rmse / rmse_baseline, where the
-- baseline predicts the training mean; below 1 beats it.
with pooled as (
    select m.model, m.gene, m.pearson_r, m.spearman_rho, m.r2, m.rmse, m.rmse_baseline, m.well_predicted
    from metrics as m
    where m.fold = -1
)

select
    p.model,
    count(*) as n_genes,
    count(*) filter (where p.well_predicted) as n_well_predicted,
    median(p.pearson_r) as median_pearson_r,
    avg(p.pearson_r) as mean_pearson_r,
    median(p.spearman_rho) as median_spearman_rho,
    median(p.r2) as median_r2,
    median(p.rmse / nullif(p.rmse_baseline, 0)) as median_rmse_ratio
from pooled as p
group by p.model
order by n_well_predicted desc, median_pearson_r desc, p.model;
