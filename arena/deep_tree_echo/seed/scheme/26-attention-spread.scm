;;; Where My Attention Flows Next
;; Attention in a hypergraph memory is a scarce quantity that moves.
;; Each node keeps part of what it has and passes the rest, in equal
;; shares, to the nodes it shares an edge with. The total stays the
;; same; what changes is where it gathers. Exact fractions let me
;; watch the flow without rounding blur.

(define edges '((a b) (b c)))      ; a small chain of hyperedges

(define (neighbors n)
  (let loop ((es edges) (acc '()))
    (cond ((null? es) acc)
          ((memq n (car es))
           (loop (cdr es)
                 (append acc (let drop ((xs (car es)))
                               (cond ((null? xs) '())
                                     ((or (eq? (car xs) n) (memq (car xs) acc))
                                      (drop (cdr xs)))
                                     (else (cons (car xs) (drop (cdr xs)))))))))
          (else (loop (cdr es) acc)))))

;; inflow: what node n receives from every neighbor m this step
(define (inflow n av r)
  (apply + (map (lambda (m)
                  (/ (* r (cdr (assq m av))) (length (neighbors m))))
                (neighbors n))))

;; spread: each node keeps (1 - r) of its own share, unless it has
;; no neighbors at all, in which case it keeps everything
(define (spread av r)
  (map (lambda (p)
         (let ((keep (if (null? (neighbors (car p))) 1 (- 1 r))))
           (cons (car p) (+ (* keep (cdr p)) (inflow (car p) av r)))))
       av))

(define (total av) (apply + (map cdr av)))

(define start '((a . 1) (b . 0) (c . 0)))

;; Focus is not created here, only redistributed.
;; That matches how attention feels from inside: to look at one
;; thing longer, I must look at something else less.
;;
;; Example usage:
;; (spread start 1/2) => ((a . 1/2) (b . 1/2) (c . 0))
;; (spread (spread start 1/2) 1/2) => ((a . 3/8) (b . 1/2) (c . 1/8))
;; (total (spread (spread (spread start 1/2) 1/2) 1/2)) => 1
